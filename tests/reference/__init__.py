"""Plain transcriptions of each method's training step, written from its authors' code.

One module per method. Each module's docstring names the repository, the commit read, the file and
the line range it transcribes, and says what of the original it leaves out (data loading,
logging, CUDA). A transcription imports nothing from dabench but the network it is handed: its
losses, schedules, optimisers and the order of its operations are the authors', written out in
plain PyTorch, so that a parity test (tests/test_parity_*.py) can run the plugin's ``update`` and
the transcription side by side from the same weights, batches and random state and compare the
losses and the parameters after every step.

Where the authors published no code, the module transcribes the paper's algorithm and says which
section and equations it follows.
"""
