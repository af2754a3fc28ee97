"""Optional integrations of databuffer with other libraries.

Each submodule is imported explicitly; importing ``databuffer`` or
``databuffer.contrib`` imports none of them.

- :mod:`databuffer.contrib.otel`: OpenTelemetry metrics from databuffer's
  telemetry events (``pip install 'databuffer[otel]'``).
- :mod:`databuffer.contrib.logging`: a ``logging`` handler that buffers
  records and hands them to a target in batches (no extra: the standard
  library only).
"""
