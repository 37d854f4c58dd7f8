"""The curriculum: stages of data, length, batch and layout walked in one run (`driver.py`),
planned and validated up front (`stages.py`), gated at each stage's end (`gate.py`)."""
