"""What a run reads: models (HF folder, GGUF, the embedded default), data sets, calibration sets, prompts and the
shipped variant plans."""
