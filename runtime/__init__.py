"""The serving core without Ray: the adapter store, the bank of tasks, the mixed-task executor and the change feed."""
