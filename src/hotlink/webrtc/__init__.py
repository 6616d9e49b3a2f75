"""WebRTC backends (layer 4): the only code that imports aiolibdatachannel or aiortc."""
