"""Who may call and how much: where the server may listen and with what TLS
(tls), callers and their bearer tokens (auth), per-caller limits (quotas),
and the gate that applies them to every call (gate)."""
