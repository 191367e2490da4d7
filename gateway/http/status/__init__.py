"""The live status page (`/status`): what the broker's stats, the workers' heartbeats and the gateway's own
refusals say, in a browser, updated by server-sent events; its HTML, script and style ship in `static/`."""
