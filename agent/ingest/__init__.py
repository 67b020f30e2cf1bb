"""The sensor data path's first stage: framed records from the robot's sensor microcontroller.

`frames` is the pure wire codec and stream decoder (the one definition of the UART wire format,
which `firmware/sensor_mcu/framing.py` mirrors); I/O modules reading a serial port build on it.
"""
