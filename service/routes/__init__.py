"""One router per resource: registrations, jobs, models, health, metrics."""
