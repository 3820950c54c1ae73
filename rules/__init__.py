"""The rules engine shared by the edge and the cloud.

No issue has asked for it yet; the package exists so the layout in the design
card is in place and both sides import rules from one place when it comes.
"""
