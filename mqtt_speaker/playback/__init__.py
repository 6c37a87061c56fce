"""PCM to the device: the sound server, PortAudio or WAV files, through one play loop; ducking other audio;
chimes. Knows no engine and no MQTT."""
