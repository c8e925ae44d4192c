"""The catalogue-metadata registry: its own daemon, signed snapshots, search, replication.

It holds only what participants publish about their datasets (titles, descriptions,
keywords, formats, the DSP endpoint to ask), signed by each publisher. It never holds or
proxies data, and nothing in a negotiation or a transfer calls it.
"""
