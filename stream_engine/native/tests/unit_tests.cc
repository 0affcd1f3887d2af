// stream_engine/native/tests/unit_tests.cc
//
// Unit tests of the native runtime's model-free parts: the JSON reader, the contract (parsing, validation, the
// graph check), reference-face files, the seeded uniform stream, the WAV/raw readers and the percentiles.
// A tiny harness (no test framework to vendor): each CHECK failure prints file:line and the run exits 1.
//
//   msync_native_unit_tests [TMP_DIR]     (TMP_DIR: where the WAV fixtures are written; default /tmp)
#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "msync/audio.h"
#include "msync/contract.h"
#include "msync/json.h"
#include "msync/runtime.h"
#include "msync/stats.h"

namespace {

int g_failures = 0;
int g_checks = 0;

#define CHECK(cond)                                                                  \
  do {                                                                               \
    ++g_checks;                                                                      \
    if (!(cond)) {                                                                   \
      ++g_failures;                                                                  \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                                \
  } while (0)

// expr must throw an exception of type T whose what() contains `needle`.
#define CHECK_THROWS(expr, T, needle)                                                                         \
  do {                                                                                                        \
    ++g_checks;                                                                                               \
    bool thrown_ = false;                                                                                     \
    try {                                                                                                     \
      expr;                                                                                                   \
    } catch (const T& e_) {                                                                                   \
      thrown_ = true;                                                                                         \
      if (std::string(e_.what()).find(needle) == std::string::npos) {                                       \
        ++g_failures;                                                                                         \
        std::fprintf(stderr, "%s:%d: %s threw \"%s\", which lacks \"%s\"\n", __FILE__, __LINE__, #expr,       \
                     e_.what(), needle);                                                                      \
      }                                                                                                       \
    } catch (const std::exception& e_) {                                                                      \
      thrown_ = true;                                                                                         \
      ++g_failures;                                                                                           \
      std::fprintf(stderr, "%s:%d: %s threw the wrong type: %s\n", __FILE__, __LINE__, #expr, e_.what());   \
    }                                                                                                         \
    if (!thrown_) {                                                                                           \
      ++g_failures;                                                                                           \
      std::fprintf(stderr, "%s:%d: %s did not throw\n", __FILE__, __LINE__, #expr);                         \
    }                                                                                                         \
  } while (0)

// ------------------------------------------------------------------------------------------------------ json

void TestJson() {
  using msync::json::Parse;
  using msync::json::ParseError;
  using msync::json::TypeError;
  auto v = Parse(R"( {"a": [1, -2.5e1, true, false, null], "s": "x\"\\\/\n\u00e9\ud83d\ude00", "o": {}} )");
  CHECK(v.IsObject());
  const auto& a = v.At("a").AsArray();
  CHECK(a.size() == 5);
  CHECK(a[0].IsInteger() && a[0].AsInteger() == 1);
  CHECK(!a[1].IsInteger() && a[1].AsNumber() == -25.0);
  CHECK(a[2].AsBool() && !a[3].AsBool() && a[4].IsNull());
  CHECK(v.At("s").AsString() == "x\"\\/\n\xc3\xa9\xf0\x9f\x98\x80");
  CHECK(v.At("o").AsObject().empty());
  CHECK(v.Find("missing") == nullptr);
  CHECK(Parse("[]").AsArray().empty());
  CHECK(Parse("0.1").AsNumber() == 0.1);
  CHECK(Parse("12345678901").AsInteger() == 12345678901LL);
  CHECK_THROWS(v.At("missing"), TypeError, "missing key");
  CHECK_THROWS(v.At("a").AsString(), TypeError, "expected a string");
  CHECK_THROWS(Parse(""), ParseError, "unexpected end");
  CHECK_THROWS(Parse("[1,]"), ParseError, "unexpected character");
  CHECK_THROWS(Parse("{\"a\" 1}"), ParseError, "expected ':'");
  CHECK_THROWS(Parse("[1] x"), ParseError, "trailing");
  CHECK_THROWS(Parse("01"), ParseError, "trailing");
  CHECK_THROWS(Parse("1."), ParseError, "digits expected");
  CHECK_THROWS(Parse("NaN"), ParseError, "unexpected character");
  CHECK_THROWS(Parse("\"abc"), ParseError, "unterminated");
  CHECK_THROWS(Parse("\"\\ud800\""), ParseError, "surrogate");
  CHECK_THROWS(Parse("\"a\tb\""), ParseError, "control character");
  CHECK_THROWS(Parse("1e999"), ParseError, "out of range");
  CHECK_THROWS(Parse(std::string(100, '[') + std::string(100, ']')), ParseError, "nesting");
}

// -------------------------------------------------------------------------------------------------- contract

// A valid metadata map for an unusual model (8 kHz, 320 samples/step, 5 landmarks in 3-D): nothing in the
// runtime may assume 16 kHz, 640 samples or 68 x 2.
std::map<std::string, std::string> Meta() {
  std::string face = "[";
  for (int i = 0; i < 5; ++i) face += std::string(i ? "," : "") + "[0.1, 0.2, " + std::to_string(i) + "]";
  face += "]";
  return {
      {"msync.contract_version", "1"},
      {"msync.sample_rate_hz", "8000"},
      {"msync.samples_per_frame", "320"},
      {"msync.fps", "25"},
      {"msync.lookahead_frames", "1"},
      {"msync.num_landmarks", "5"},
      {"msync.landmark_dims", "3"},
      {"msync.landmark_layout", "toy5"},
      {"msync.coordinates", "unit cube"},
      {"msync.audio_input", R"({"name": "pcm", "shape": ["B", 320], "dtype": "float32"})"},
      {"msync.landmarks_output", R"({"name": "points", "shape": ["B", 5, 3], "dtype": "float32"})"},
      {"msync.states",
       R"J([{"name": "mem", "next_name": "mem_out", "shape": ["B", 7], "dtype": "float32", "init": "zeros"},
           {"name": "noise", "next_name": "noise_out", "shape": ["B", 2, 3], "dtype": "float32", "init": "uniform(0,1)"},
           {"name": "last", "next_name": "last_out", "shape": ["B", 5, 3], "dtype": "float32", "init": "reference_face"}])J"},
      {"msync.reference_face", face},
      {"msync.model_version", "toy"},
      {"msync.training_data", "none"},
      {"msync.generator_config", R"({"lookahead_frames": 1, "num_landmarks": 5})"},
      {"msync.frontend", R"({"sample_rate_hz": 8000, "samples_per_landmark_frame": 320})"},
      {"other.key", "ignored"},
  };
}

msync::StepContract FromMeta(std::map<std::string, std::string> m) { return msync::StepContract::FromMetadata(m); }

std::map<std::string, std::string> With(const std::string& key, const std::string& value) {
  auto m = Meta();
  m["msync." + key] = value;
  return m;
}

std::map<std::string, std::string> Without(const std::string& key) {
  auto m = Meta();
  m.erase("msync." + key);
  return m;
}

void TestContract() {
  using msync::ContractError;
  msync::StepContract c = FromMeta(Meta());
  CHECK(c.sample_rate_hz == 8000 && c.samples_per_frame == 320 && c.fps == 25.0 && c.lookahead_frames == 1);
  CHECK(c.audio_input.name == "pcm" && c.audio_input.shape == (std::vector<int64_t>{msync::kBatchDim, 320}));
  CHECK(c.landmarks_output.Numel(4) == 60);
  CHECK(c.states.size() == 3 && c.states[1].name == "noise" && c.states[1].next_name == "noise_out");
  CHECK(c.states[1].init == "uniform(0,1)" && c.states[1].ConcreteShape(2) == (std::vector<int64_t>{2, 2, 3}));
  CHECK(c.reference_face.size() == 15 && c.reference_face[14] == 4.0f);
  CHECK(c.StateIndex("last") == 2 && c.StateIndex("nope") == -1);
  CHECK(std::fabs(c.FrameDurationMs() - 40.0) < 1e-12);
  CHECK(c.Summary().find("8000 Hz") != std::string::npos);

  CHECK_THROWS(FromMeta({{"x", "y"}}), ContractError, "no msync contract");
  CHECK_THROWS(FromMeta(With("contract_version", "2")), ContractError, "unsupported msync contract version '2'");
  CHECK_THROWS(FromMeta(Without("states")), ContractError, "lacks the contract keys ['msync.states']");
  CHECK_THROWS(FromMeta(With("sample_rate_hz", "16k")), ContractError, "must be an integer");
  CHECK_THROWS(FromMeta(With("fps", "fast")), ContractError, "must be a number");
  CHECK_THROWS(FromMeta(With("fps", "50")), ContractError, "inconsistent timing");
  CHECK_THROWS(FromMeta(With("audio_input", R"({"name": "pcm", "shape": ["B", 640]})")), ContractError,
               "expected ['B', 320]");
  CHECK_THROWS(FromMeta(With("audio_input", "[1")), ContractError, "not valid JSON");
  CHECK_THROWS(FromMeta(With("audio_input", R"({"shape": ["B", 320]})")), ContractError, "with 'name' and 'shape'");
  CHECK_THROWS(FromMeta(With("landmarks_output", R"({"name": "p", "shape": ["B", 68, 2]})")), ContractError,
               "expected ['B', 5, 3]");
  CHECK_THROWS(FromMeta(With("states", "[]")), ContractError, "states is empty");
  CHECK_THROWS(FromMeta(With("states", R"([{"name": "m", "next_name": "n", "shape": [1, 7], "dtype": "float32",
                                           "init": "zeros"}])")),
               ContractError, "must start with the batch dim");
  CHECK_THROWS(FromMeta(With("states", R"([{"name": "m", "next_name": "n", "shape": ["B", 0], "dtype": "float32",
                                           "init": "zeros"}])")),
               ContractError, "positive integers");
  CHECK_THROWS(FromMeta(With("states", R"([{"name": "m", "next_name": "n", "shape": ["B", 7], "dtype": "float32",
                                           "init": "ones"}])")),
               ContractError, "unknown init 'ones'");
  CHECK_THROWS(FromMeta(With("states", R"([{"name": "m", "next_name": "n", "shape": ["B", 7], "dtype": "float16",
                                           "init": "zeros"}])")),
               ContractError, "unsupported dtype 'float16'");
  CHECK_THROWS(FromMeta(With("states", R"([{"name": "m", "shape": ["B", 7], "dtype": "float32", "init": "zeros"}])")),
               ContractError, "lacks ['next_name']");
  CHECK_THROWS(FromMeta(With("states", R"([{"name": "m", "next_name": "n", "shape": ["B", 4, 3], "dtype": "float32",
                                           "init": "reference_face"}])")),
               ContractError, "starts from the reference face");
  CHECK_THROWS(FromMeta(With("states", R"([{"name": "pcm", "next_name": "n", "shape": ["B", 7], "dtype": "float32",
                                           "init": "zeros"}])")),
               ContractError, "duplicate input names");
  CHECK_THROWS(FromMeta(With("states", R"([{"name": "m", "next_name": "m", "shape": ["B", 7], "dtype": "float32",
                                           "init": "zeros"}])")),
               ContractError, "both as input and output");
  CHECK_THROWS(FromMeta(With("reference_face", "[[1, 2, 3]]")), ContractError, "5x3");
  CHECK_THROWS(FromMeta(With("reference_face", "{}")), ContractError, "list of coordinate lists");
  CHECK_THROWS(FromMeta(With("frontend", "[]")), ContractError, "frontend must be a JSON object");
  CHECK_THROWS(FromMeta(With("frontend", R"({"sample_rate_hz": 16000})")), ContractError,
               "frontend sample_rate_hz 16000");
  CHECK_THROWS(FromMeta(With("generator_config", R"({"num_landmarks": 68})")), ContractError,
               "generator_config num_landmarks 68");
}

void TestCheckGraph() {
  using msync::ContractError;
  using msync::GraphTensor;
  msync::StepContract c = FromMeta(Meta());
  auto t = [](const std::string& n, std::vector<int64_t> shape) {
    GraphTensor g;
    g.name = n;
    g.shape = std::move(shape);
    g.type_name = "tensor(float)";
    return g;
  };
  std::vector<GraphTensor> in = {t("pcm", {-1, 320}), t("mem", {-1, 7}), t("noise", {-1, 2, 3}), t("last", {-1, 5, 3})};
  std::vector<GraphTensor> out = {t("points", {-1, 5, 3}), t("mem_out", {-1, 7}), t("noise_out", {-1, -1, 3}),
                                  t("last_out", {1, 5, 3})};  // symbolic non-batch dim and fixed batch: accepted
  c.CheckGraph(in, out, "m.onnx");  // no throw
  CHECK(true);
  auto bad_in = in;
  bad_in[0] = t("pcm", {-1, 640});
  CHECK_THROWS(c.CheckGraph(bad_in, out, "m.onnx"), ContractError,
               "m.onnx: the graph does not match its contract: input 'pcm': graph shape [?, 640], contract ['B', 320]");
  bad_in = in;
  bad_in.pop_back();
  bad_in.push_back(t("extra", {-1}));
  CHECK_THROWS(c.CheckGraph(bad_in, out, "m.onnx"), ContractError, "graph lacks inputs ['last']");
  CHECK_THROWS(c.CheckGraph(bad_in, out, "m.onnx"), ContractError, "graph has inputs the contract does not name: ['extra']");
  auto bad_out = out;
  bad_out[1].is_float32 = false;
  bad_out[1].type_name = "tensor(element type 7)";
  CHECK_THROWS(c.CheckGraph(in, bad_out, "m.onnx"), ContractError, "output 'mem_out': graph type tensor(element type 7)");
  bad_out = out;
  bad_out[2] = t("noise_out", {-1, 6});
  CHECK_THROWS(c.CheckGraph(in, bad_out, "m.onnx"), ContractError, "output 'noise_out': graph shape [?, 6]");
}

void TestReferenceFace() {
  using msync::ContractError;
  auto f = msync::ParseReferenceFace("[[1, 2], [3, 4.5]]", 2, 2, "face.json");
  CHECK(f == (std::vector<float>{1, 2, 3, 4.5f}));
  f = msync::ParseReferenceFace(R"({"landmarks": [[1, 2], [3, 4]], "note": "x"})", 2, 2, "face.json");
  CHECK(f.size() == 4 && f[3] == 4.0f);
  CHECK_THROWS(msync::ParseReferenceFace("[[1, 2]]", 2, 2, "face.json"), ContractError, "finite 2x2 list");
  CHECK_THROWS(msync::ParseReferenceFace("[[1, 2], [3]]", 2, 2, "face.json"), ContractError, "finite 2x2 list");
  CHECK_THROWS(msync::ParseReferenceFace("[[1, 2], [3, \"4\"]]", 2, 2, "face.json"), ContractError, "numbers");
  CHECK_THROWS(msync::ParseReferenceFace("{\"x\": 1}", 2, 2, "face.json"), ContractError, "\"landmarks\"");
  CHECK_THROWS(msync::ParseReferenceFace("[[1, 2], [3, 4]", 2, 2, "face.json"), ContractError, "face.json: invalid JSON");
}

void TestUniform() {
  std::vector<float> a(1000), b(1000), c(600), d(400);
  uint64_t k1 = 0, k2 = 0;
  msync::UniformFill(7, &k1, a.data(), a.size());
  msync::UniformFill(7, &k2, c.data(), c.size());  // the stream is counter-based: split draws give the same values
  msync::UniformFill(7, &k2, d.data(), d.size());
  CHECK(k1 == 1000 && k2 == 1000);
  CHECK(std::equal(c.begin(), c.end(), a.begin()) && std::equal(d.begin(), d.end(), a.begin() + 600));
  uint64_t k3 = 0;
  msync::UniformFill(8, &k3, b.data(), b.size());
  CHECK(a != b);
  double mean = 0;
  bool in_range = true;
  for (float x : a) {
    in_range = in_range && x >= 0.0f && x < 1.0f;
    mean += x / a.size();
  }
  CHECK(in_range);
  CHECK(std::fabs(mean - 0.5) < 0.05);
}

// ----------------------------------------------------------------------------------------------------- audio

void WriteBytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}

void Put16(std::vector<uint8_t>* b, uint16_t v) {
  b->push_back(uint8_t(v));
  b->push_back(uint8_t(v >> 8));
}
void Put32(std::vector<uint8_t>* b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b->push_back(uint8_t(v >> (8 * i)));
}

// A WAV with a LIST chunk before "fmt " and the given format/payload.
std::vector<uint8_t> Wav(uint16_t tag, uint16_t channels, uint32_t rate, uint16_t bits, const std::vector<uint8_t>& data,
                         uint32_t data_size_field) {
  std::vector<uint8_t> b = {'R', 'I', 'F', 'F'};
  Put32(&b, 0);
  for (char c : std::string("WAVELIST")) b.push_back(uint8_t(c));
  Put32(&b, 3);
  b.insert(b.end(), {'a', 'b', 'c', 0});  // odd size + pad byte
  for (char c : std::string("fmt ")) b.push_back(uint8_t(c));
  Put32(&b, 16);
  Put16(&b, tag);
  Put16(&b, channels);
  Put32(&b, rate);
  Put32(&b, rate * channels * bits / 8);
  Put16(&b, uint16_t(channels * bits / 8));
  Put16(&b, bits);
  for (char c : std::string("data")) b.push_back(uint8_t(c));
  Put32(&b, data_size_field);
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

std::vector<float> ReadAll(msync::PcmSource* src, size_t chunk) {
  std::vector<float> out, buf(chunk);
  while (size_t n = src->Read(buf.data(), chunk)) out.insert(out.end(), buf.begin(), buf.begin() + n);
  return out;
}

void TestAudio(const std::string& tmp) {
  using msync::AudioError;
  // 16-bit stereo via the writer (interleaved L/R), averaged on reading.
  std::string p16 = tmp + "/stereo16.wav";
  msync::WriteWav16(p16, {0.5f, -0.5f, 1.0f, 0.0f, -1.0f, -1.0f}, 16000, 2);
  auto src = msync::OpenWav(p16);
  CHECK(src->sample_rate_hz() == 16000 && src->channels() == 2);
  CHECK(src->Describe().find("PCM 16-bit, 16000 Hz, 2 channels") != std::string::npos);
  auto got = ReadAll(src.get(), 2);
  CHECK(got.size() == 3);
  CHECK(std::fabs(got[0]) < 1e-4 && std::fabs(got[1] - 32767.0f / 65536.0f) < 1e-6 &&
        std::fabs(got[2] + 32767.0f / 32768.0f) < 1e-6);

  // float32 mono with a LIST chunk first, read in odd chunk sizes.
  std::vector<uint8_t> payload;
  const float vals[5] = {0.25f, -0.125f, 0.0f, 1.5f, -0.75f};
  for (float v : vals) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    Put32(&payload, u);
  }
  std::string pf = tmp + "/float.wav";
  WriteBytes(pf, Wav(3, 1, 22050, 32, payload, uint32_t(payload.size())));
  src = msync::OpenWav(pf);
  CHECK(src->sample_rate_hz() == 22050);
  got = ReadAll(src.get(), 3);
  CHECK(got == std::vector<float>(vals, vals + 5));

  // 24-bit, data size 0 ("unknown": read to the end).
  std::vector<uint8_t> p24 = {0x00, 0x00, 0x40, 0x00, 0x00, 0xC0};  // +0.5, -0.5
  std::string pw24 = tmp + "/pcm24.wav";
  WriteBytes(pw24, Wav(1, 1, 16000, 24, p24, 0));
  src = msync::OpenWav(pw24);
  got = ReadAll(src.get(), 10);
  CHECK(got.size() == 2 && got[0] == 0.5f && got[1] == -0.5f);

  // errors
  std::string bad = tmp + "/not.wav";
  WriteBytes(bad, {'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd', '!', '!'});
  CHECK_THROWS(msync::OpenWav(bad), AudioError, "not a WAV file");
  CHECK_THROWS(msync::OpenWav(tmp + "/missing.wav"), AudioError, "cannot open");
  std::string alaw = tmp + "/alaw.wav";
  WriteBytes(alaw, Wav(6, 1, 8000, 8, {1, 2}, 2));
  CHECK_THROWS(msync::OpenWav(alaw), AudioError, "unsupported WAV encoding (format tag 6");
  std::string torn = tmp + "/torn.wav";
  WriteBytes(torn, Wav(1, 1, 16000, 16, {1, 2, 3}, 0));
  src = msync::OpenWav(torn);
  CHECK_THROWS(ReadAll(src.get(), 4), AudioError, "middle of a sample");
  std::string nan = tmp + "/nan.wav";
  std::vector<uint8_t> nanp;
  Put32(&nanp, 0x7FC00000u);
  WriteBytes(nan, Wav(3, 1, 16000, 32, nanp, 4));
  src = msync::OpenWav(nan);
  CHECK_THROWS(ReadAll(src.get(), 4), AudioError, "non-finite sample");
  std::vector<uint8_t> nodata = Wav(1, 1, 16000, 16, {}, 0);
  nodata.resize(nodata.size() - 8);  // drop the data chunk header
  std::string pnd = tmp + "/nodata.wav";
  WriteBytes(pnd, nodata);
  CHECK_THROWS(msync::OpenWav(pnd), AudioError, "without a data chunk");

  // raw int16 from a FILE*
  std::string raw = tmp + "/raw.s16";
  WriteBytes(raw, {0x00, 0x40, 0x00, 0x80, 0xFF, 0x7F});
  std::FILE* f = std::fopen(raw.c_str(), "rb");
  src = msync::OpenRaw(f, msync::RawFormat::kInt16, 16000, "raw.s16");
  got = ReadAll(src.get(), 2);
  std::fclose(f);
  CHECK(got.size() == 3 && got[0] == 0.5f && got[1] == -1.0f && got[2] == 32767.0f / 32768.0f);
}

void TestStats() {
  // numpy.percentile([1, 2, 3, 4, 10], [50, 95, 99]) = 3, 8.8, 9.76
  auto s = msync::Summarise({10, 2, 4, 1, 3});
  CHECK(s.n == 5 && s.p50 == 3.0 && std::fabs(s.p95 - 8.8) < 1e-9 && std::fabs(s.p99 - 9.76) < 1e-9);
  CHECK(s.min == 1 && s.max == 10 && s.mean == 4);
  CHECK(msync::Summarise({}).n == 0);
}

}  // namespace

int main(int argc, char** argv) {
  std::string tmp = argc > 1 ? argv[1] : "/tmp";
  ::mkdir(tmp.c_str(), 0755);
  const std::pair<const char*, std::function<void()>> tests[] = {
      {"json", TestJson},         {"contract", TestContract},
      {"check_graph", TestCheckGraph}, {"reference_face", TestReferenceFace},
      {"uniform", TestUniform},   {"audio", [&] { TestAudio(tmp); }},
      {"stats", TestStats},
  };
  for (const auto& t : tests) {
    int before = g_failures;
    try {
      t.second();
    } catch (const std::exception& e) {
      ++g_failures;
      std::fprintf(stderr, "test %s: unexpected exception: %s\n", t.first, e.what());
    }
    std::printf("%-16s %s\n", t.first, g_failures == before ? "ok" : "FAILED");
  }
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
