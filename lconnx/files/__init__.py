"""The file contract: external data read and written under lconnx's rules
(external_data), every output path checked before any work (outputs), stops that clean up
(signals)."""
