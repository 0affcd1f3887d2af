// stream_engine/native/src/runtime.cc
//
// StepModel / StepStream over the ONNX Runtime C++ API (see runtime.h).
//
// ORT_API_MANUAL_INIT is defined for this file only (CMakeLists.txt): the API table is requested explicitly, so a
// library older than the headers is reported as a ModelLoadError instead of crashing on a null table.
#include "msync/runtime.h"

#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <stdexcept>
#include <sys/stat.h>

namespace msync {
namespace {

// The API table, requested once; nullptr when the loaded library is older than the headers.
const OrtApi* InitOrtApi() {
  static const OrtApi* api = [] {
    const OrtApi* a = OrtGetApiBase()->GetApi(ORT_API_VERSION);
    if (a != nullptr) Ort::InitApi(a);
    return a;
  }();
  return api;
}

// One ORT environment per process (ORT's recommendation); warnings and errors go to stderr.
Ort::Env& SharedEnv() {
  static Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "msync");
  return env;
}

GraphTensor Describe(const std::string& name, const Ort::TypeInfo& info) {
  GraphTensor t;
  t.name = name;
  if (info.GetONNXType() != ONNX_TYPE_TENSOR) {
    t.is_float32 = false;
    t.type_name = "non-tensor";
    t.has_shape = false;
    return t;
  }
  auto tinfo = info.GetTensorTypeAndShapeInfo();
  t.is_float32 = tinfo.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  t.type_name = t.is_float32 ? "tensor(float)" : "tensor(element type " + std::to_string(tinfo.GetElementType()) + ")";
  t.shape = tinfo.GetShape();
  return t;
}

uint64_t SplitMix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

}  // namespace

void UniformFill(uint64_t seed, uint64_t* counter, float* dst, size_t n) {
  for (size_t k = 0; k < n; ++k) {
    uint64_t z = SplitMix64(seed + (*counter + k + 1) * 0x9E3779B97F4A7C15ULL);
    dst[k] = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
  }
  *counter += n;
}

// ------------------------------------------------------------------------------------------------ StepModel

struct StepModel::Impl {
  std::string path;
  RuntimeOptions options;
  std::unique_ptr<Ort::Session> session;
  StepContract contract;
  bool profiling = false;
};

StepModel::StepModel(const std::string& path, const RuntimeOptions& options) : impl_(new Impl) {
  impl_->path = path;
  impl_->options = options;
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) throw ModelLoadError(path + ": no such model file");
  if (!S_ISREG(st.st_mode)) throw ModelLoadError(path + ": not a regular file");
  if (!std::ifstream(path, std::ios::binary)) throw ModelLoadError(path + ": cannot open the model file for reading");
  if (InitOrtApi() == nullptr) {
    throw ModelLoadError("the ONNX Runtime library (" + std::string(OrtGetApiBase()->GetVersionString()) +
                         ") is older than the headers this runtime was built with (API " +
                         std::to_string(ORT_API_VERSION) + "): rebuild with older headers or a newer library");
  }
  try {
    Ort::SessionOptions so;
    so.SetIntraOpNumThreads(options.intra_op_threads);
    so.SetInterOpNumThreads(options.inter_op_threads);
    so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    so.SetExecutionMode(ExecutionMode::ORT_SEQUENTIAL);
    if (!options.profile_prefix.empty()) {
      so.EnableProfiling(options.profile_prefix.c_str());
      impl_->profiling = true;
    }
    impl_->session.reset(new Ort::Session(SharedEnv(), path.c_str(), so));
  } catch (const Ort::Exception& e) {
    throw ModelLoadError(path + ": cannot load as an ONNX model (" + e.what() + ")");
  }
  Ort::Session& s = *impl_->session;
  Ort::AllocatorWithDefaultOptions alloc;
  std::map<std::string, std::string> meta;
  std::vector<GraphTensor> inputs, outputs;
  try {
    Ort::ModelMetadata md = s.GetModelMetadata();
    for (auto& key : md.GetCustomMetadataMapKeysAllocated(alloc)) {
      auto value = md.LookupCustomMetadataMapAllocated(key.get(), alloc);
      meta[key.get()] = value ? value.get() : "";
    }
    for (size_t i = 0; i < s.GetInputCount(); ++i) {
      inputs.push_back(Describe(s.GetInputNameAllocated(i, alloc).get(), s.GetInputTypeInfo(i)));
    }
    for (size_t i = 0; i < s.GetOutputCount(); ++i) {
      outputs.push_back(Describe(s.GetOutputNameAllocated(i, alloc).get(), s.GetOutputTypeInfo(i)));
    }
  } catch (const Ort::Exception& e) {
    throw ModelLoadError(path + ": cannot read the model's metadata or signature (" + e.what() + ")");
  }
  try {
    impl_->contract = StepContract::FromMetadata(meta);
  } catch (const ContractError& e) {
    throw ContractError(path + ": " + e.what());
  }
  impl_->contract.CheckGraph(inputs, outputs, path);
}

StepModel::~StepModel() = default;

const StepContract& StepModel::contract() const { return impl_->contract; }
const std::string& StepModel::path() const { return impl_->path; }
const RuntimeOptions& StepModel::options() const { return impl_->options; }

std::string StepModel::EndProfiling() {
  if (!impl_->profiling) return "";
  impl_->profiling = false;
  Ort::AllocatorWithDefaultOptions alloc;
  return impl_->session->EndProfilingAllocated(alloc).get();
}

std::string StepModel::OrtVersion() { return OrtGetApiBase()->GetVersionString(); }
int StepModel::OrtHeaderApiVersion() { return ORT_API_VERSION; }

// ----------------------------------------------------------------------------------------------- StepStream

struct StepStream::Impl {
  const StepModel* model = nullptr;
  Ort::Session* session = nullptr;
  int64_t batch = 1;
  int64_t steps = 0;
  int cur = 0;                                  // the buffer set holding the current state
  std::vector<float> audio, landmarks;
  std::vector<std::vector<float>> states[2];    // [set][state index]
  std::vector<int64_t> numel;
  Ort::MemoryInfo mem{nullptr};
  std::vector<Ort::Value> values;               // keep the tensor views alive while bound
  std::unique_ptr<Ort::IoBinding> binding[2];   // binding[k] reads set k and writes set 1 - k
  Ort::RunOptions run_options;

  Ort::Value View(std::vector<float>* buf, const std::vector<int64_t>& shape) {
    return Ort::Value::CreateTensor<float>(mem, buf->data(), buf->size(), shape.data(), shape.size());
  }
};

StepStream::StepStream(const StepModel& model, int64_t batch, const StreamInit& init) : impl_(new Impl) {
  if (batch < 1) throw std::invalid_argument("batch must be >= 1, got " + std::to_string(batch));
  const StepContract& c = model.contract();
  Impl& m = *impl_;
  m.model = &model;
  m.session = model.impl_->session.get();
  m.batch = batch;
  m.audio.assign(static_cast<size_t>(c.audio_input.Numel(batch)), 0.0f);
  m.landmarks.assign(static_cast<size_t>(c.landmarks_output.Numel(batch)), 0.0f);
  for (const auto& s : c.states) {
    m.numel.push_back(s.Numel(batch));
    for (auto& set : m.states) set.emplace_back(static_cast<size_t>(s.Numel(batch)), 0.0f);
  }
  try {
    m.mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    m.values.push_back(m.View(&m.audio, c.audio_input.ConcreteShape(batch)));
    m.values.push_back(m.View(&m.landmarks, c.landmarks_output.ConcreteShape(batch)));
    for (int k = 0; k < 2; ++k) {
      m.binding[k].reset(new Ort::IoBinding(*m.session));
      m.binding[k]->BindInput(c.audio_input.name.c_str(), m.values[0]);
      m.binding[k]->BindOutput(c.landmarks_output.name.c_str(), m.values[1]);
    }
    for (size_t i = 0; i < c.states.size(); ++i) {
      const auto shape = c.states[i].ConcreteShape(batch);
      for (int k = 0; k < 2; ++k) {
        m.values.push_back(m.View(&m.states[k][i], shape));
        // set k is the input of binding k and the output of binding 1 - k
        m.binding[k]->BindInput(c.states[i].name.c_str(), m.values.back());
        m.binding[1 - k]->BindOutput(c.states[i].next_name.c_str(), m.values.back());
      }
    }
  } catch (const Ort::Exception& e) {
    throw std::runtime_error(std::string("cannot bind the stream's buffers: ") + e.what());
  }
  Reset(init);
}

StepStream::~StepStream() = default;

void StepStream::Reset(const StreamInit& init) {
  Impl& m = *impl_;
  const StepContract& c = m.model->contract();
  const size_t face_n = static_cast<size_t>(c.FrameFloats());
  if (!init.reference_face.empty() && init.reference_face.size() != face_n &&
      init.reference_face.size() != face_n * static_cast<size_t>(m.batch)) {
    const std::string each = std::to_string(face_n);
    throw std::invalid_argument("reference face has " + std::to_string(init.reference_face.size()) +
                                " values; expected " + each +
                                (m.batch > 1 ? " (one face) or " + std::to_string(face_n * m.batch) + " (one per stream)"
                                             : std::string(" (one face)")));
  }
  for (float v : init.reference_face) {
    // The model works in normalised crop coordinates (the contract's reference face is about 0.2-0.8); a face in
    // pixels would be taken as is and barely move. Python normalises pixels with its fixed crop; here: refuse.
    if (!std::isfinite(v) || std::fabs(v) > 1.5f) {
      throw std::invalid_argument(
          "reference face coordinates must be finite, normalised crop coordinates (about 0..1, as the contract's "
          "reference face; pixels are not converted here: normalise them as msync's Python runtime does, "
          "stream_engine.session.reference_face_from_points), got " + std::to_string(v));
    }
  }
  const std::vector<float>& face = init.reference_face.empty() ? c.reference_face : init.reference_face;
  m.cur = 0;
  m.steps = 0;
  uint64_t counter = 0;
  for (size_t i = 0; i < c.states.size(); ++i) {
    std::vector<float>& dst = m.states[0][i];
    const std::string& kind = c.states[i].init;
    if (kind == "zeros") {
      std::fill(dst.begin(), dst.end(), 0.0f);
    } else if (kind == "uniform(0,1)") {
      UniformFill(init.seed, &counter, dst.data(), dst.size());
    } else {  // "reference_face": (B, N, D), validated by the contract
      for (int64_t b = 0; b < m.batch; ++b) {
        const float* src = face.size() == face_n ? face.data() : face.data() + b * face_n;
        std::copy(src, src + face_n, dst.begin() + b * face_n);
      }
    }
  }
  std::fill(m.landmarks.begin(), m.landmarks.end(), 0.0f);
}

void StepStream::Step() {
  Impl& m = *impl_;
  // One NaN or infinite sample would make the state non-finite for good (until Reset), so it is refused before
  // anything runs; finite samples beyond [-1, 1] are clipped, as msync's Python engine clips them.
  for (float v : m.audio) {  // checked first: a refused step leaves audio() and the state as they were
    if (!std::isfinite(v)) throw std::invalid_argument("audio() holds a NaN or infinite sample; nothing was run");
  }
  for (float& v : m.audio) v = std::min(1.0f, std::max(-1.0f, v));
  try {
    m.session->Run(m.run_options, *m.binding[m.cur]);
  } catch (const Ort::Exception& e) {
    throw std::runtime_error(std::string("step failed in ONNX Runtime: ") + e.what());
  }
  m.cur = 1 - m.cur;
  ++m.steps;
}

int64_t StepStream::batch() const { return impl_->batch; }
float* StepStream::audio() { return impl_->audio.data(); }
const float* StepStream::landmarks() const { return impl_->landmarks.data(); }
int64_t StepStream::steps() const { return impl_->steps; }
float* StepStream::state(size_t i) { return impl_->states[impl_->cur].at(i).data(); }
const float* StepStream::state(size_t i) const { return impl_->states[impl_->cur].at(i).data(); }
int64_t StepStream::state_numel(size_t i) const { return impl_->numel.at(i); }
size_t StepStream::num_states() const { return impl_->numel.size(); }

}  // namespace msync
