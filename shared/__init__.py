"""Code both processes use: the wire protocol, configuration, engine arguments."""
