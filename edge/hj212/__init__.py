"""HJ 212-2017 (pollution-source data transmission): codec, gateway server, platform uploader."""

from .codec import Hj212Error, Packet, Reason, StreamFramer, crc16, decode_frame, make_flag
from .readings import CODES, Code, packet_to_readings

__all__ = ["CODES", "Code", "Hj212Error", "Packet", "Reason", "StreamFramer", "crc16", "decode_frame",
           "make_flag", "packet_to_readings"]
