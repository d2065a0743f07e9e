"""Everything that talks to a model server: the client, event-stream reading, retries, headers, structured output."""
