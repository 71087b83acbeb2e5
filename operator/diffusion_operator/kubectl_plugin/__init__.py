"""`kubectl dtj`: DiffusionTrainingJobs from the terminal, as a kubectl plugin."""
