"""What a speaker does, with no MQTT and no sound device: the queue policy, the voicing of one request,
the cost guard, the audio cache, the runtime defaults."""
