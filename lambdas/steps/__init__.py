"""Step handlers: one Lambda each, invoked by durable workflows through their `live` alias."""
