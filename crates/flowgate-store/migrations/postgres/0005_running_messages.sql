-- Turns still running, for the sweep that fails the ones a crashed server left behind.
CREATE INDEX messages_running ON messages (status) WHERE status = 'running';
