// stream_engine/native/include/msync/audio.h
//
// PCM sources for the native runtime: a WAV reader (RIFF/WAVE, read sequentially so it also works on a pipe)
// and raw little-endian PCM (float32 or int16) from any FILE*, e.g. stdin. Both deliver mono float samples in
// [-1, 1]; multi-channel WAV is averaged to mono (as stream_engine/audio_io.py does). No resampling: the caller
// checks sample_rate_hz() against the model's contract and refuses a mismatch with a clear message
// (resample with `sox in.wav -r 16000 out.wav` or `ffmpeg -i in -ar 16000 -ac 1 out.wav`).
#ifndef MSYNC_AUDIO_H_
#define MSYNC_AUDIO_H_

#include <cstdint>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace msync {

/// Audio that cannot be used: unreadable, not WAV, an unsupported encoding, a non-finite sample, a torn frame.
class AudioError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class PcmSource {
 public:
  virtual ~PcmSource() = default;
  /// Read up to `n` mono samples into dst; returns fewer than n only at the end of the stream (0 = ended).
  /// Blocks until n samples or the end arrive. Throws AudioError.
  virtual size_t Read(float* dst, size_t n) = 0;
  virtual int sample_rate_hz() const = 0;  ///< 0 when unknown (raw PCM without a stated rate)
  virtual int channels() const = 0;        ///< channels in the input (output is always mono)
  virtual std::string Describe() const = 0;  ///< e.g. "speech.wav: WAV PCM 16-bit, 16000 Hz, mono"
};

/// Open a WAV file ("-" = stdin). Supports PCM 8/16/24/32-bit integer and IEEE float 32/64-bit, also in
/// WAVE_FORMAT_EXTENSIBLE; a data chunk of unknown length (streamed WAV, size 0 or 0xFFFFFFFF) is read to the end.
/// Throws AudioError.
std::unique_ptr<PcmSource> OpenWav(const std::string& path);

enum class RawFormat { kFloat32, kInt16 };

/// Raw mono little-endian PCM from an open stream (not closed by the source). `rate_hz` is what the caller
/// states the audio is (reported by sample_rate_hz()). `name` is for messages.
std::unique_ptr<PcmSource> OpenRaw(std::FILE* file, RawFormat format, int rate_hz, const std::string& name);

/// Write mono float samples as a 16-bit PCM WAV (values clipped to [-1, 1]); used by tests. Throws AudioError.
void WriteWav16(const std::string& path, const std::vector<float>& samples, int rate_hz, int channels = 1);

}  // namespace msync

#endif  // MSYNC_AUDIO_H_
