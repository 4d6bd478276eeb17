"""Provider SDK clients whose HTTP transport reserves before each call, prices the answer
(streams included, passed through unchanged) and settles: ``NullSpend.openai()`` and friends."""
