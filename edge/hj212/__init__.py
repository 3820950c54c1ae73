"""HJ 212-2017 (pollution-source data transmission): codec, gateway server, platform uploader."""

from carbonlink.codecs.hj212.codec import Hj212Error, Packet, Reason, StreamFramer, crc16, decode_frame, make_flag
from carbonlink.codecs.hj212.readings import CODES, Code, packet_to_readings

__all__ = ["CODES", "Code", "Hj212Error", "Packet", "Reason", "StreamFramer", "crc16", "decode_frame",
           "make_flag", "packet_to_readings"]
