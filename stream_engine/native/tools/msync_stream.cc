// stream_engine/native/tools/msync_stream.cc
//
// msync_stream: stream PCM through an exported msync step model with the native runtime and write the landmark
// frames, timing every step. Also a benchmark mode (--bench) that times the step alone at any batch size.
//
//   msync_stream --model model.onnx --wav speech.wav --out landmarks.csv
//   arecord -q -f S16_LE -r 16000 -c 1 -t raw | msync_stream --model model.onnx --raw-s16 - --drop-warmup
//   msync_stream --model model.onnx --bench 2000 --batch 64
//
// Exit status: 0 ok, 1 runtime or I/O failure, 2 usage error, 3 model load error (missing/corrupt file),
// 4 contract error (no or malformed msync contract, graph mismatch), 5 audio error.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "msync/audio.h"
#include "msync/contract.h"
#include "msync/runtime.h"
#include "msync/stats.h"

namespace {

constexpr int kExitOk = 0, kExitFailure = 1, kExitUsage = 2, kExitModel = 3, kExitContract = 4, kExitAudio = 5;

const char kUsage[] =
    "usage: msync_stream --model MODEL.onnx (--wav FILE | --raw-f32 FILE | --raw-s16 FILE) [options]\n"
    "       msync_stream --model MODEL.onnx --bench STEPS [--batch B] [--warmup W] [--threads N]\n"
    "       msync_stream --model MODEL.onnx --info\n"
    "\n"
    "Streams mono PCM at the model's sample rate through the step model (one step per samples_per_frame samples,\n"
    "as the model's msync.* contract says) and writes one landmark frame per step. FILE may be '-' for stdin.\n"
    "\n"
    "input:\n"
    "  --wav FILE            WAV: PCM 8/16/24/32-bit or float 32/64-bit, any channel count (averaged to mono);\n"
    "                        its rate must be the model's (no resampling: sox in.wav -r 16000 out.wav)\n"
    "  --raw-f32 FILE        raw float32 little-endian mono PCM in [-1, 1]\n"
    "  --raw-s16 FILE        raw int16 little-endian mono PCM\n"
    "  --rate HZ             sample rate of raw input (default: the model's; another value is refused)\n"
    "  --no-pad              drop a trailing partial step (default: pad it with silence); either way the\n"
    "                        look-ahead tail is flushed with lookahead_frames steps of silence, so every frame\n"
    "                        of the input is written: ceil(samples / samples_per_frame) frames after the warm-up\n"
    "output:\n"
    "  --out FILE            landmarks ('-' = stdout, the default)\n"
    "  --format csv|f32      csv (default): header, then step,time_ms,step_us,x0,y0,...,xN,yN per step\n"
    "                        (time_ms = (step - lookahead_frames) * frame duration: the frame's time);\n"
    "                        f32: raw float32 (steps, num_landmarks, landmark_dims), little-endian\n"
    "  --timings FILE        per-step time in microseconds, one line per step\n"
    "  --summary-json FILE   the timing summary as JSON\n"
    "  --drop-warmup         skip the first lookahead_frames outputs (the reference face, not speech)\n"
    "  --quiet               no summary on stderr\n"
    "stream start:\n"
    "  --seed N              seed of the uniform(0,1) states (default 0; splitmix64, see runtime.h)\n"
    "  --reference-face F    JSON identity: a num_landmarks x landmark_dims list, or {\"landmarks\": [...]}\n"
    "  --initial-state F     raw float32 of every state in contract order (overrides --seed/--reference-face)\n"
    "  --dump-state F        write the final state in the same layout\n"
    "runtime:\n"
    "  --threads N           ONNX Runtime intra-op threads (default 1)\n"
    "  --profile PREFIX      write an ONNX Runtime per-node profile (PREFIX_<time>.json)\n"
    "  --bench STEPS         time STEPS steps on seeded noise (no audio I/O) and print a JSON summary\n"
    "  --batch B             streams per step in --bench mode (default 1)\n"
    "  --warmup W            untimed steps before --bench timing (default 20)\n"
    "  --info                print the model's contract and exit\n"
    "\n"
    "exit status: 0 ok, 1 runtime/I-O failure, 2 usage, 3 model load error, 4 contract error, 5 audio error\n";

struct Args {
  std::string model, input, out = "-", format = "csv", timings, summary_json, reference_face, initial_state,
                                dump_state, profile;
  enum class Input { kNone, kWav, kRawF32, kRawS16 } input_kind = Input::kNone;
  int rate = 0, threads = 1;
  long long bench = 0, batch = 1, warmup = 20;
  unsigned long long seed = 0;
  bool no_pad = false, drop_warmup = false, quiet = false, info = false;
};

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

long long ParseInt(const std::string& flag, const std::string& v, long long lo) {
  char* end = nullptr;
  errno = 0;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || errno || *end != '\0' || x < lo) {
    throw UsageError(flag + " needs an integer >= " + std::to_string(lo) + ", got '" + v + "'");
  }
  return x;
}

Args ParseArgs(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string f = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(f + " needs a value");
      return argv[++i];
    };
    auto input = [&](Args::Input kind) {
      if (a.input_kind != Args::Input::kNone) throw UsageError("give one input: --wav, --raw-f32 or --raw-s16");
      a.input_kind = kind;
      a.input = value();
    };
    if (f == "-h" || f == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(kExitOk);
    } else if (f == "--model") {
      a.model = value();
    } else if (f == "--wav") {
      input(Args::Input::kWav);
    } else if (f == "--raw-f32") {
      input(Args::Input::kRawF32);
    } else if (f == "--raw-s16") {
      input(Args::Input::kRawS16);
    } else if (f == "--rate") {
      a.rate = static_cast<int>(ParseInt(f, value(), 1));
    } else if (f == "--out") {
      a.out = value();
    } else if (f == "--format") {
      a.format = value();
      if (a.format != "csv" && a.format != "f32") throw UsageError("--format is csv or f32, got '" + a.format + "'");
    } else if (f == "--timings") {
      a.timings = value();
    } else if (f == "--summary-json") {
      a.summary_json = value();
    } else if (f == "--reference-face") {
      a.reference_face = value();
    } else if (f == "--initial-state") {
      a.initial_state = value();
    } else if (f == "--dump-state") {
      a.dump_state = value();
    } else if (f == "--seed") {
      a.seed = static_cast<unsigned long long>(ParseInt(f, value(), 0));
    } else if (f == "--threads") {
      a.threads = static_cast<int>(ParseInt(f, value(), 1));
    } else if (f == "--profile") {
      a.profile = value();
    } else if (f == "--bench") {
      a.bench = ParseInt(f, value(), 1);
    } else if (f == "--batch") {
      a.batch = ParseInt(f, value(), 1);
    } else if (f == "--warmup") {
      a.warmup = ParseInt(f, value(), 0);
    } else if (f == "--no-pad") {
      a.no_pad = true;
    } else if (f == "--drop-warmup") {
      a.drop_warmup = true;
    } else if (f == "--quiet") {
      a.quiet = true;
    } else if (f == "--info") {
      a.info = true;
    } else {
      throw UsageError("unknown option '" + f + "'");
    }
  }
  if (a.model.empty()) throw UsageError("--model is required");
  int modes = (a.bench > 0) + (a.input_kind != Args::Input::kNone) + a.info;
  if (modes != 1) throw UsageError("give exactly one of --wav/--raw-f32/--raw-s16, --bench or --info");
  if (a.batch != 1 && a.bench == 0) throw UsageError("--batch applies to --bench only (a stream is one batch row)");
  if (a.rate && a.input_kind != Args::Input::kRawF32 && a.input_kind != Args::Input::kRawS16) {
    throw UsageError("--rate applies to raw input only (a WAV file states its rate)");
  }
  return a;
}

std::string ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(std::string("cannot read ") + what + " " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}

std::string SummaryJson(const msync::TimingSummary& s, const Args& a, const msync::StepModel& model,
                        long long batch, const char* mode, double audio_s, double wall_s) {
  std::ostringstream o;
  o.precision(6);
  o << std::fixed;
  o << "{\"backend\": \"cpp_onnxruntime\", \"mode\": \"" << mode << "\", \"model\": \"" << JsonEscape(a.model)
    << "\", \"ort_version\": \"" << msync::StepModel::OrtVersion()
    << "\", \"ort_header_api\": " << msync::StepModel::OrtHeaderApiVersion() << ", \"threads\": " << a.threads
    << ", \"batch\": " << batch << ", \"warmup\": " << (a.bench ? a.warmup : 0) << ", \"steps\": " << s.n
    << ", \"mean_us\": " << s.mean << ", \"min_us\": " << s.min << ", \"p50_us\": " << s.p50
    << ", \"p95_us\": " << s.p95 << ", \"p99_us\": " << s.p99 << ", \"max_us\": " << s.max
    << ", \"frame_ms\": " << model.contract().FrameDurationMs() << ", \"audio_s\": " << audio_s
    << ", \"wall_s\": " << wall_s << "}";
  return o.str();
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path);
}

// --bench: STEPS timed steps (after W untimed ones) of B streams on seeded noise, no audio I/O.
int RunBench(const Args& a, msync::StepModel& model) {
  const auto& c = model.contract();
  msync::StreamInit init;
  init.seed = a.seed;
  msync::StepStream stream(model, a.batch, init);
  const size_t n_audio = static_cast<size_t>(c.audio_input.Numel(a.batch));
  std::vector<float> noise(n_audio);
  uint64_t counter = 0;
  std::vector<double> us;
  us.reserve(static_cast<size_t>(a.bench));
  auto wall0 = std::chrono::steady_clock::now();
  for (long long k = 0; k < a.warmup + a.bench; ++k) {
    // Fresh low-level noise every step (outside the timed region): speech-like input magnitude, no denormals.
    msync::UniformFill(a.seed + 1, &counter, noise.data(), n_audio);
    float* dst = stream.audio();
    for (size_t i = 0; i < n_audio; ++i) dst[i] = 0.2f * (noise[i] - 0.5f);
    auto t0 = std::chrono::steady_clock::now();
    stream.Step();
    auto t1 = std::chrono::steady_clock::now();
    if (k >= a.warmup) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  msync::TimingSummary s = msync::Summarise(us);
  std::string json = SummaryJson(s, a, model, a.batch, "bench", 0.0, wall);
  std::printf("%s\n", json.c_str());
  if (!a.summary_json.empty()) WriteText(a.summary_json, json + "\n");
  if (!a.timings.empty()) {
    std::ofstream t(a.timings);
    for (double v : us) t << v << "\n";
  }
  if (!a.profile.empty()) std::fprintf(stderr, "msync_stream: profile written to %s\n", model.EndProfiling().c_str());
  return kExitOk;
}

int RunStream(const Args& a, msync::StepModel& model) {
  const auto& c = model.contract();
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> raw_file(nullptr, &std::fclose);  // outlives `src`
  std::unique_ptr<msync::PcmSource> src;
  if (a.input_kind == Args::Input::kWav) {
    src = msync::OpenWav(a.input);
  } else {
    std::FILE* f = a.input == "-" ? stdin : std::fopen(a.input.c_str(), "rb");
    if (f == nullptr) throw msync::AudioError(a.input + ": cannot open (" + std::strerror(errno) + ")");
    if (f != stdin) raw_file.reset(f);
    int rate = a.rate ? a.rate : static_cast<int>(c.sample_rate_hz);
    src = msync::OpenRaw(f, a.input_kind == Args::Input::kRawF32 ? msync::RawFormat::kFloat32
                                                                   : msync::RawFormat::kInt16,
                         rate, a.input == "-" ? "<stdin>" : a.input);
  }
  if (src->sample_rate_hz() != c.sample_rate_hz) {
    throw msync::AudioError(src->Describe() + ": the model needs " + std::to_string(c.sample_rate_hz) +
                            " Hz audio; resample first, e.g. `sox IN -r " + std::to_string(c.sample_rate_hz) +
                            " -c 1 OUT.wav` or `ffmpeg -i IN -ar " + std::to_string(c.sample_rate_hz) +
                            " -ac 1 OUT.wav`");
  }

  msync::StreamInit init;
  init.seed = a.seed;
  if (!a.reference_face.empty()) {
    try {
      init.reference_face = msync::ParseReferenceFace(ReadFile(a.reference_face, "reference face"),
                                                      c.num_landmarks, c.landmark_dims, a.reference_face);
    } catch (const msync::ContractError& e) {
      throw std::runtime_error(e.what());  // the user's file, not the model's contract
    }
  }
  msync::StepStream stream(model, 1, init);
  if (!a.initial_state.empty()) {
    std::string raw = ReadFile(a.initial_state, "initial state");
    size_t want = 0;
    for (size_t i = 0; i < stream.num_states(); ++i) want += static_cast<size_t>(stream.state_numel(i));
    if (raw.size() != want * sizeof(float)) {
      throw std::runtime_error(a.initial_state + ": " + std::to_string(raw.size()) + " bytes; the model's states " +
                               "take " + std::to_string(want * sizeof(float)) + " (float32, contract order, batch 1)");
    }
    size_t off = 0;
    for (size_t i = 0; i < stream.num_states(); ++i) {
      size_t bytes = static_cast<size_t>(stream.state_numel(i)) * sizeof(float);
      std::memcpy(stream.state(i), raw.data() + off, bytes);
      off += bytes;
    }
  }

  std::FILE* out = a.out == "-" ? stdout : std::fopen(a.out.c_str(), "wb");
  if (out == nullptr) throw std::runtime_error("cannot write " + a.out + " (" + std::strerror(errno) + ")");
  const bool live = a.out == "-";  // flush every frame so a downstream reader sees it at once
  const int64_t spf = c.samples_per_frame;
  const int64_t nf = c.FrameFloats();
  const double frame_ms = c.FrameDurationMs();
  if (a.format == "csv") {
    std::string header = "step,time_ms,step_us";
    for (int64_t k = 0; k < c.num_landmarks; ++k) {
      for (int64_t d = 0; d < c.landmark_dims; ++d) {
        header += "," + std::string(d == 0 ? "x" : d == 1 ? "y" : "z" + std::to_string(d)) + std::to_string(k);
      }
    }
    std::fprintf(out, "%s\n", header.c_str());
  }
  std::vector<double> us;
  std::vector<char> line;
  long long samples_in = 0;
  auto wall0 = std::chrono::steady_clock::now();
  // Every frame of the input is emitted, the look-ahead tail included: a trailing partial step is padded with
  // silence (unless --no-pad drops it), then lookahead_frames steps of silence are run so the last frames'
  // look-ahead is complete (as EngineCore.flush does). N input samples give ceil(N / spf) frames
  // (floor with --no-pad) after the warm-up; an empty input gives none.
  long long tail_steps = -1;  // silent steps still owed once the input has ended (-1: input not ended)
  while (true) {
    size_t got = 0;
    if (tail_steps < 0) {
      got = src->Read(stream.audio(), static_cast<size_t>(spf));
      samples_in += static_cast<long long>(got);
      if (got < static_cast<size_t>(spf)) {  // the input ended in this read
        const bool step_partial = got > 0 && !a.no_pad;
        const long long frames_in = samples_in / spf + (step_partial ? 1 : 0);
        tail_steps = frames_in > 0 ? c.lookahead_frames : 0;
        if (!step_partial) {
          if (tail_steps == 0) break;
          got = 0;
          std::fill(stream.audio(), stream.audio() + spf, 0.0f);
          --tail_steps;
        } else {
          std::fill(stream.audio() + got, stream.audio() + spf, 0.0f);
        }
      }
    } else {
      if (tail_steps == 0) break;
      std::fill(stream.audio(), stream.audio() + spf, 0.0f);
      --tail_steps;
    }
    auto t0 = std::chrono::steady_clock::now();
    stream.Step();
    auto t1 = std::chrono::steady_clock::now();
    double step_us = std::chrono::duration<double, std::micro>(t1 - t0).count();
    us.push_back(step_us);
    const long long step = stream.steps() - 1;
    if (!(a.drop_warmup && step < c.lookahead_frames)) {
      const float* lm = stream.landmarks();
      if (a.format == "f32") {
        std::fwrite(lm, sizeof(float), static_cast<size_t>(nf), out);
      } else {
        line.clear();
        char buf[64];
        int k = std::snprintf(buf, sizeof buf, "%lld,%.3f,%.3f", step, (step - c.lookahead_frames) * frame_ms, step_us);
        line.insert(line.end(), buf, buf + k);
        for (int64_t i = 0; i < nf; ++i) {
          k = std::snprintf(buf, sizeof buf, ",%.9g", lm[i]);  // 9 significant digits: exact float32 round trip
          line.insert(line.end(), buf, buf + k);
        }
        line.push_back('\n');
        std::fwrite(line.data(), 1, line.size(), out);
      }
      if (live) std::fflush(out);
    }
  }
  double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  if (out != stdout && std::fclose(out) != 0) throw std::runtime_error("write failed: " + a.out);
  if (out == stdout) std::fflush(stdout);

  if (!a.timings.empty()) {
    std::ofstream t(a.timings);
    t.precision(3);
    t << std::fixed;
    for (double v : us) t << v << "\n";
    if (!t) throw std::runtime_error("cannot write " + a.timings);
  }
  if (!a.dump_state.empty()) {
    std::ofstream st(a.dump_state, std::ios::binary);
    for (size_t i = 0; i < stream.num_states(); ++i) {
      st.write(reinterpret_cast<const char*>(stream.state(i)),
               static_cast<std::streamsize>(stream.state_numel(i) * sizeof(float)));
    }
    if (!st) throw std::runtime_error("cannot write " + a.dump_state);
  }
  msync::TimingSummary s = msync::Summarise(us);
  double audio_s = static_cast<double>(samples_in) / static_cast<double>(c.sample_rate_hz);
  if (!a.summary_json.empty()) WriteText(a.summary_json, SummaryJson(s, a, model, 1, "stream", audio_s, wall) + "\n");
  if (!a.quiet) {
    std::fprintf(stderr,
                 "msync_stream: %s\n  %zu steps (%.2f s of audio) in %.2f s; step time us: p50 %.0f  p95 %.0f  "
                 "p99 %.0f  max %.0f  mean %.0f  (%.1f%% of the %.0f ms frame budget at p50; ORT %s, %d thread%s)\n",
                 src->Describe().c_str(), s.n, audio_s, wall, s.p50, s.p95, s.p99, s.max, s.mean,
                 100.0 * s.p50 / (1000.0 * frame_ms), frame_ms, msync::StepModel::OrtVersion().c_str(), a.threads,
                 a.threads == 1 ? "" : "s");
  }
  if (!a.profile.empty()) std::fprintf(stderr, "msync_stream: profile written to %s\n", model.EndProfiling().c_str());
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  try {
    a = ParseArgs(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "msync_stream: %s\n\n%s", e.what(), kUsage);
    return kExitUsage;
  }
  try {
    msync::RuntimeOptions opts;
    opts.intra_op_threads = a.threads;
    opts.profile_prefix = a.profile;
    msync::StepModel model(a.model, opts);
    if (a.info) {
      std::printf("%s\nORT library %s, headers API %d\n", model.contract().Summary().c_str(),
                  msync::StepModel::OrtVersion().c_str(), msync::StepModel::OrtHeaderApiVersion());
      return kExitOk;
    }
    return a.bench > 0 ? RunBench(a, model) : RunStream(a, model);
  } catch (const msync::ContractError& e) {
    std::fprintf(stderr, "msync_stream: contract error: %s\n", e.what());
    return kExitContract;
  } catch (const msync::ModelLoadError& e) {
    std::fprintf(stderr, "msync_stream: model error: %s\n", e.what());
    return kExitModel;
  } catch (const msync::AudioError& e) {
    std::fprintf(stderr, "msync_stream: audio error: %s\n", e.what());
    return kExitAudio;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "msync_stream: error: %s\n", e.what());
    return kExitFailure;
  }
}
