"""Azure IoT Hub: IoT Edge deployments, device sync and update triggers through a hub."""
