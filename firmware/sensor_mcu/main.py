"""Sensor MCU main loop (RP2040 / Raspberry Pi Pico): sample, frame, write to UART0, keep the rate.

Every record gets the next number of one sequence counter (from 0 at boot, wrapping at 2**32):
that is how the Pi's FrameDecoder detects lost records and reboots. t_ms is the uptime in ms,
accumulated from ticks_diff so it wraps at 2**32 rather than at ticks_ms's own period.
"""

import time

import machine

import framing
import sensors

PERIOD_MS = 20              # IMU and motors at 50 Hz: about 3.3 kB/s of the link's 11.5 kB/s
BATTERY_EVERY = 50          # battery once a second
FAULT_IMU_BUS = 1           # FAULT codes: the IMU did not answer on I2C


def main() -> None:
    uart = machine.UART(0, baudrate=115200)     # GP0 TX / GP1 RX
    i2c = machine.I2C(0, scl=machine.Pin(5), sda=machine.Pin(4), freq=400_000)
    imu = sensors.Imu(i2c)
    motors = sensors.MotorCurrents([machine.ADC(machine.Pin(26)), machine.ADC(machine.Pin(27))])
    battery = sensors.Battery(machine.ADC(machine.Pin(28)), machine.ADC(4))

    # A lone delimiter ends whatever half frame the Pi holds from before our reset.
    uart.write(b"\x00")
    seq = 0
    uptime = 0
    last = time.ticks_ms()
    due = last
    tick = 0
    while True:
        now = time.ticks_ms()
        uptime = (uptime + time.ticks_diff(now, last)) & 0xFFFFFFFF
        last = now
        records: list[tuple[int, tuple[int | str | list[int], ...]]] = []
        try:
            records.append((framing.IMU, (uptime,) + imu.read()))
        except OSError:
            records.append((framing.FAULT, (uptime, FAULT_IMU_BUS)))
        records.append((framing.MOTORS, (uptime, motors.read())))
        if tick % BATTERY_EVERY == 0:
            records.append((framing.BATTERY, (uptime,) + battery.read()))
        for rtype, values in records:
            uart.write(framing.encode_record(rtype, seq, values))
            seq = (seq + 1) & 0xFFFFFFFF
        tick += 1
        due = time.ticks_add(due, PERIOD_MS)
        wait = time.ticks_diff(due, time.ticks_ms())
        if wait > 0:
            time.sleep_ms(wait)
        else:
            due = time.ticks_ms()   # overran: start again from now rather than burst to catch up


if __name__ == "__main__":
    main()
