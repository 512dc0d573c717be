"""Circuits: attribution graphs over replacement models and component-level circuit discovery."""
