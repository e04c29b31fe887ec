"""`aierun serve`: the model loaded once, answering OpenAI-compatible HTTP requests."""
