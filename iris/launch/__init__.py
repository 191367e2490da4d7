"""`iris up`: the nats-server finder, the launcher that starts every part, and the supervisor that restarts
them."""
