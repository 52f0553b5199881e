"""Runtime helpers shared by every Sluice Lambda (workflows and step handlers)."""
