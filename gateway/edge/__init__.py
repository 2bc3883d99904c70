"""The edge: what every request passes first (API keys, header and body limits)."""
