"""The small core every stage and ``thop_ext`` share.

Inputs, the modules surgery inserts, atomic writes, channel labels and the channel-rule registry
(``rules``: one rule per module type, for analysis, surgery and counting).
"""
