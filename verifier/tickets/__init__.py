"""Ticket finders. Each returns a `Ticket`: trained weights, rewind weights, mask and metadata."""

from verifier.tickets.imp import ImpConfig, find_imp_ticket
from verifier.tickets.ticket import Ticket, load_ticket, save_ticket

__all__ = ["ImpConfig", "Ticket", "find_imp_ticket", "load_ticket", "save_ticket"]
