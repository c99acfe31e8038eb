"""Prompt files shipped with qcheck (few-shot prompts for generation tasks)."""
