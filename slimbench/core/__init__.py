"""The small core every stage and ``thop_ext`` share: inputs, the modules surgery inserts, atomic writes."""
