"""The robot's sensors as seen from an RP2040: an MPU-6050 IMU on I2C, motor and battery ADCs.

Each reader takes its bus or ADC objects as arguments (main.py builds them from `machine`), so
wiring lives in one place, and returns integers in the units of the wire format
(agent/ingest/frames.py): mm/s^2, millidegrees/s, mA, mV, %, 0.1 degC.
"""

import struct

import machine

_MPU_ADDR = 0x68
_PWR_MGMT_1 = 0x6B
_ACCEL_XOUT_H = 0x3B        # 14 bytes: accel x y z, temperature, gyro x y z (i16 big-endian each)
# Power-on full scales: +-2 g (16384 LSB/g) and +-250 dps (131 LSB/dps).
_MM_S2_NUM, _MM_S2_DEN = 980665, 1638400    # 9806.65 mm/s^2 per g / 16384 LSB per g
_MDPS_NUM, _MDPS_DEN = 1000, 131

_ADC_FULL = 65535           # read_u16() range
_VREF_MV = 3300


class Imu:
    """MPU-6050 at 0x68: woken once, then read as one 14-byte burst (consistent axes)."""

    def __init__(self, i2c: machine.I2C) -> None:
        self._i2c = i2c
        i2c.writeto_mem(_MPU_ADDR, _PWR_MGMT_1, b"\x00")   # clear SLEEP, internal oscillator

    def read(self) -> tuple[int, int, int, int, int, int]:
        """(ax, ay, az, gx, gy, gz). Raises OSError when the bus does not answer."""
        raw = self._i2c.readfrom_mem(_MPU_ADDR, _ACCEL_XOUT_H, 14)
        ax, ay, az, _temp, gx, gy, gz = struct.unpack(">7h", raw)
        return (ax * _MM_S2_NUM // _MM_S2_DEN, ay * _MM_S2_NUM // _MM_S2_DEN,
                az * _MM_S2_NUM // _MM_S2_DEN, gx * _MDPS_NUM // _MDPS_DEN,
                gy * _MDPS_NUM // _MDPS_DEN, gz * _MDPS_NUM // _MDPS_DEN)


class MotorCurrents:
    """Hall current sensors (ACS712-5A class on 3.3 V: 1650 mV at 0 A, 185 mV/A), one ADC each."""

    ZERO_MV = 1650
    MV_PER_A = 185

    def __init__(self, adcs: list[machine.ADC]) -> None:
        self._adcs = adcs

    def read(self) -> list[int]:
        """Currents in mA, one per motor, clamped to i16."""
        out = []
        for adc in self._adcs:
            mv = adc.read_u16() * _VREF_MV // _ADC_FULL
            ma = (mv - self.ZERO_MV) * 1000 // self.MV_PER_A
            out.append(max(-32768, min(32767, ma)))
        return out


class Battery:
    """A 2S Li-ion pack through a 1:3 divider on an ADC pin, and the RP2040's own temperature sensor."""

    DIVIDER = 3
    EMPTY_MV = 6400
    FULL_MV = 8400

    def __init__(self, pack_adc: machine.ADC, temp_adc: machine.ADC) -> None:
        self._pack = pack_adc
        self._temp = temp_adc

    def read(self) -> tuple[int, int, int]:
        """(mv, soc_pct, temp_dc): state of charge is linear in voltage, good enough to warn."""
        mv = self._pack.read_u16() * _VREF_MV * self.DIVIDER // _ADC_FULL
        soc = (mv - self.EMPTY_MV) * 100 // (self.FULL_MV - self.EMPTY_MV)
        # RP2040 datasheet 4.9.5: T = 27 - (V - 0.706) / 0.001721, here in 0.1 degC from microvolts
        uv = self._temp.read_u16() * _VREF_MV * 1000 // _ADC_FULL
        temp_dc = 270 - (uv - 706000) * 10 // 1721
        return (min(mv, 65535), max(0, min(100, soc)), temp_dc)
