"""The one request path both APIs share: validate, route, admit, ensure ready, relay."""
