"""Evaluation: retrieval metrics, comparative runs over data set splits, and their reports."""
