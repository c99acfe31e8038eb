"""Quality measurements: perplexity, multiple-choice accuracy, generation, robustness, aggregation."""
