"""The strategies that turn a chat request (a `Turn`) into a reply: off, naive, pref_aligner."""
