"""Edges where requests enter Iris besides raw NATS: the NATS micro service `iris` (`iris.api.*`)."""
