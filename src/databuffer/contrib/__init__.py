"""Optional integrations of databuffer with other libraries.

Each submodule needs its own extra and is imported explicitly; importing
``databuffer`` or ``databuffer.contrib`` imports none of them.

- :mod:`databuffer.contrib.otel`: OpenTelemetry metrics from databuffer's
  telemetry events (``pip install 'databuffer[otel]'``).
"""
