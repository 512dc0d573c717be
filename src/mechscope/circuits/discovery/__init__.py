"""Automated circuit discovery over components: the component graph, edge attribution (EAP, EAP-IG), ACDC, evaluation."""
