"""The framework-free TALE core: prompts, budgets, token counting, generation, estimation, answers."""
