"""Who is calling (authentication), what they may do (authorization), how often (rate limits)."""
