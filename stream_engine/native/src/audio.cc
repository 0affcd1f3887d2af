// stream_engine/native/src/audio.cc
//
// WAV and raw PCM sources (see audio.h). The WAV reader never seeks, so `--wav -` works on a pipe.
#include "msync/audio.h"

#include <cerrno>
#include <cmath>
#include <cstring>

namespace msync {
namespace {

static_assert(sizeof(float) == 4 && sizeof(double) == 8, "IEEE float expected");

bool HostIsLittleEndian() {
  const uint16_t one = 1;
  uint8_t b;
  std::memcpy(&b, &one, 1);
  return b == 1;
}

uint16_t Le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t Le32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}

// Sample encodings the converter knows.
enum class Encoding { kU8, kS16, kS24, kS32, kF32, kF64 };

float Convert(const uint8_t* p, Encoding e) {
  switch (e) {
    case Encoding::kU8: return (static_cast<float>(p[0]) - 128.0f) / 128.0f;
    case Encoding::kS16: return static_cast<float>(static_cast<int16_t>(Le16(p))) / 32768.0f;
    case Encoding::kS24: {
      int32_t v = static_cast<int32_t>((static_cast<uint32_t>(p[0]) << 8) | (static_cast<uint32_t>(p[1]) << 16) |
                                       (static_cast<uint32_t>(p[2]) << 24)) >> 8;
      return static_cast<float>(v) / 8388608.0f;
    }
    case Encoding::kS32: return static_cast<float>(static_cast<double>(static_cast<int32_t>(Le32(p))) / 2147483648.0);
    case Encoding::kF32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    case Encoding::kF64: {
      double d;
      std::memcpy(&d, p, 8);
      return static_cast<float>(d);
    }
  }
  return 0.0f;
}

// Interleaved PCM of a known encoding from a FILE*, averaged to mono, with an optional byte limit.
class InterleavedSource : public PcmSource {
 public:
  InterleavedSource(std::FILE* f, bool owns, Encoding enc, int bytes_per_sample, int channels, int rate,
                    uint64_t limit_bytes, bool limited, std::string name, std::string description)
      : f_(f), owns_(owns), enc_(enc), bps_(bytes_per_sample), channels_(channels), rate_(rate),
        left_(limit_bytes), limited_(limited), name_(std::move(name)), description_(std::move(description)) {}
  ~InterleavedSource() override {
    if (owns_ && f_ != nullptr) std::fclose(f_);
  }

  size_t Read(float* dst, size_t n) override {
    const size_t frame_bytes = static_cast<size_t>(bps_) * channels_;
    size_t done = 0;
    while (done < n && !ended_) {
      size_t want = (n - done) * frame_bytes;
      if (limited_ && want > left_) want = static_cast<size_t>(left_);
      if (want == 0) {
        ended_ = true;
        break;
      }
      buf_.resize(pending_.size() + want);
      std::memcpy(buf_.data(), pending_.data(), pending_.size());
      size_t got = std::fread(buf_.data() + pending_.size(), 1, want, f_);
      if (got < want) {
        if (std::ferror(f_)) throw AudioError(name_ + ": read error");
        ended_ = true;  // EOF (a pipe that closed, or a data chunk shorter than its header says)
      }
      if (limited_) left_ -= got;
      size_t have = pending_.size() + got;
      size_t frames = have / frame_bytes;
      for (size_t i = 0; i < frames; ++i) {
        const uint8_t* p = buf_.data() + i * frame_bytes;
        float acc = 0.0f;
        for (int ch = 0; ch < channels_; ++ch) acc += Convert(p + ch * bps_, enc_);
        float v = channels_ == 1 ? acc : acc / static_cast<float>(channels_);
        if (!std::isfinite(v)) {
          throw AudioError(name_ + ": non-finite sample (NaN or infinity) at sample " +
                           std::to_string(samples_ + done + i));
        }
        dst[done + i] = v;
      }
      done += frames;
      pending_.assign(buf_.begin() + frames * frame_bytes, buf_.begin() + have);
      if (ended_ && !pending_.empty()) {
        throw AudioError(name_ + ": the audio ends in the middle of a sample (" + std::to_string(pending_.size()) +
                         " stray bytes; expected whole " + std::to_string(frame_bytes) + "-byte samples)");
      }
    }
    samples_ += done;
    return done;
  }
  int sample_rate_hz() const override { return rate_; }
  int channels() const override { return channels_; }
  std::string Describe() const override { return description_; }

 private:
  std::FILE* f_;
  bool owns_;
  Encoding enc_;
  int bps_, channels_, rate_;
  uint64_t left_;
  bool limited_;
  bool ended_ = false;
  uint64_t samples_ = 0;
  std::string name_, description_;
  std::vector<uint8_t> buf_, pending_;
};

void ReadExact(std::FILE* f, uint8_t* dst, size_t n, const std::string& name, const char* what) {
  if (std::fread(dst, 1, n, f) != n) throw AudioError(name + ": not a WAV file (truncated " + what + ")");
}

void Skip(std::FILE* f, uint64_t n, const std::string& name) {
  uint8_t scratch[4096];
  while (n > 0) {
    size_t k = n < sizeof scratch ? static_cast<size_t>(n) : sizeof scratch;
    if (std::fread(scratch, 1, k, f) != k) throw AudioError(name + ": truncated WAV (a chunk runs past the end)");
    n -= k;
  }
}

}  // namespace

std::unique_ptr<PcmSource> OpenWav(const std::string& path) {
  if (!HostIsLittleEndian()) throw AudioError("the WAV reader needs a little-endian host");
  const bool is_stdin = path == "-";
  const std::string name = is_stdin ? "<stdin>" : path;
  std::FILE* f = is_stdin ? stdin : std::fopen(path.c_str(), "rb");
  if (f == nullptr) throw AudioError(name + ": cannot open (" + std::strerror(errno) + ")");
  struct Closer {
    std::FILE* f;
    bool owns;
    ~Closer() {
      if (owns && f) std::fclose(f);
    }
  } closer{f, !is_stdin};

  uint8_t hdr[12];
  size_t got = std::fread(hdr, 1, 12, f);
  if (got < 12 || std::memcmp(hdr, "RIFF", 4) != 0 || std::memcmp(hdr + 8, "WAVE", 4) != 0) {
    if (got >= 4 && (std::memcmp(hdr, "RIFX", 4) == 0 || std::memcmp(hdr, "RF64", 4) == 0)) {
      throw AudioError(name + ": big-endian (RIFX) and RF64 WAV files are not supported");
    }
    throw AudioError(name + ": not a WAV file (no RIFF/WAVE header); for raw PCM use --raw-f32 or --raw-s16");
  }
  bool have_fmt = false;
  uint16_t tag = 0, channels = 0, bits = 0, block_align = 0;
  uint32_t rate = 0;
  while (true) {
    uint8_t ch[8];
    if (std::fread(ch, 1, 8, f) != 8) throw AudioError(name + ": WAV file without a data chunk");
    uint32_t size = Le32(ch + 4);
    if (std::memcmp(ch, "fmt ", 4) == 0) {
      if (size < 16 || size > 1024) throw AudioError(name + ": malformed WAV fmt chunk");
      std::vector<uint8_t> fmt(size + (size & 1));
      ReadExact(f, fmt.data(), fmt.size(), name, "fmt chunk");
      tag = Le16(&fmt[0]);
      channels = Le16(&fmt[2]);
      rate = Le32(&fmt[4]);
      block_align = Le16(&fmt[12]);
      bits = Le16(&fmt[14]);
      if (tag == 0xFFFE) {  // WAVE_FORMAT_EXTENSIBLE: the real format is the first 2 bytes of the sub-format GUID
        if (size < 40) throw AudioError(name + ": malformed WAVE_FORMAT_EXTENSIBLE fmt chunk");
        tag = Le16(&fmt[24]);
      }
      have_fmt = true;
    } else if (std::memcmp(ch, "data", 4) == 0) {
      if (!have_fmt) throw AudioError(name + ": WAV data chunk before the fmt chunk");
      Encoding enc;
      std::string what;
      if (tag == 1 && bits == 8) {
        enc = Encoding::kU8, what = "PCM 8-bit";
      } else if (tag == 1 && bits == 16) {
        enc = Encoding::kS16, what = "PCM 16-bit";
      } else if (tag == 1 && bits == 24) {
        enc = Encoding::kS24, what = "PCM 24-bit";
      } else if (tag == 1 && bits == 32) {
        enc = Encoding::kS32, what = "PCM 32-bit";
      } else if (tag == 3 && bits == 32) {
        enc = Encoding::kF32, what = "float 32-bit";
      } else if (tag == 3 && bits == 64) {
        enc = Encoding::kF64, what = "float 64-bit";
      } else {
        throw AudioError(name + ": unsupported WAV encoding (format tag " + std::to_string(tag) + ", " +
                         std::to_string(bits) + " bits); supported: PCM 8/16/24/32-bit, float 32/64-bit");
      }
      if (channels == 0 || rate == 0) throw AudioError(name + ": WAV header with 0 channels or 0 Hz");
      if (block_align != channels * (bits / 8)) {
        throw AudioError(name + ": WAV block align " + std::to_string(block_align) + " does not match " +
                         std::to_string(channels) + " channels of " + std::to_string(bits) + " bits");
      }
      // A streaming writer that did not know the length writes 0 or 0xFFFFFFFF: read to the end then.
      bool limited = size != 0 && size != 0xFFFFFFFFu;
      std::string desc = name + ": WAV " + what + ", " + std::to_string(rate) + " Hz, " +
                         (channels == 1 ? std::string("mono") : std::to_string(channels) + " channels (averaged)");
      closer.owns = false;  // the source owns the file now
      return std::unique_ptr<PcmSource>(new InterleavedSource(f, !is_stdin, enc, bits / 8, channels,
                                                              static_cast<int>(rate), size, limited, name, desc));
    } else {
      Skip(f, static_cast<uint64_t>(size) + (size & 1), name);  // LIST, fact, cue, ...: chunks are word-aligned
    }
  }
}

std::unique_ptr<PcmSource> OpenRaw(std::FILE* file, RawFormat format, int rate_hz, const std::string& name) {
  if (!HostIsLittleEndian()) throw AudioError("raw PCM input needs a little-endian host");
  bool f32 = format == RawFormat::kFloat32;
  std::string desc = name + ": raw " + (f32 ? "float32" : "int16") + " little-endian mono, " +
                     std::to_string(rate_hz) + " Hz (as stated)";
  return std::unique_ptr<PcmSource>(new InterleavedSource(file, false, f32 ? Encoding::kF32 : Encoding::kS16,
                                                          f32 ? 4 : 2, 1, rate_hz, 0, false, name, desc));
}

void WriteWav16(const std::string& path, const std::vector<float>& samples, int rate_hz, int channels) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) throw AudioError(path + ": cannot write (" + std::strerror(errno) + ")");
  auto put16 = [&](uint16_t v) { uint8_t b[2] = {uint8_t(v), uint8_t(v >> 8)}; std::fwrite(b, 1, 2, f); };
  auto put32 = [&](uint32_t v) {
    uint8_t b[4] = {uint8_t(v), uint8_t(v >> 8), uint8_t(v >> 16), uint8_t(v >> 24)};
    std::fwrite(b, 1, 4, f);
  };
  const uint32_t data = static_cast<uint32_t>(samples.size() * 2);
  std::fwrite("RIFF", 1, 4, f);
  put32(36 + data);
  std::fwrite("WAVEfmt ", 1, 8, f);
  put32(16);
  put16(1);
  put16(static_cast<uint16_t>(channels));
  put32(static_cast<uint32_t>(rate_hz));
  put32(static_cast<uint32_t>(rate_hz * channels * 2));
  put16(static_cast<uint16_t>(channels * 2));
  put16(16);
  std::fwrite("data", 1, 4, f);
  put32(data);
  for (float s : samples) {
    float c = s > 1.0f ? 1.0f : (s < -1.0f ? -1.0f : s);
    put16(static_cast<uint16_t>(static_cast<int16_t>(std::lrint(c * 32767.0f))));
  }
  if (std::fclose(f) != 0) throw AudioError(path + ": write failed");
}

}  // namespace msync
