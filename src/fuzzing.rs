//! Entry points for the fuzz targets in `fuzz/`: the parsers that see
//! untrusted input, reachable without a server. Not part of the API.
