"""The scheduler's jobs, one module each; ``matchmaker.service.Scheduler`` puts them together."""
