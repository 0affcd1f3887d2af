// stream_engine/native/include/msync/contract.h
//
// The step contract of an exported msync model, read from the ONNX file's `msync.*` metadata: the C++ twin of
// stream_engine/contract.py (same keys, same checks, same error wording where it matters). Nothing here
// depends on ONNX Runtime, so the parsing and the graph check are unit-tested without a model.
//
//   step(audio[B, samples_per_frame], state...) -> (landmarks[B, num_landmarks, landmark_dims], state_next...)
//
// No model constant (640 samples, 256 LSTM units, 352 carried samples, state names...) is written anywhere in
// the native runtime: all of it comes from here.
#ifndef MSYNC_CONTRACT_H_
#define MSYNC_CONTRACT_H_

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace msync {

/// A model file that cannot be used: missing, unreadable, corrupt, or not an msync step model.
class ModelLoadError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A contract that is missing, malformed, of an unsupported version, or that the graph does not honour.
class ContractError : public ModelLoadError {
 public:
  using ModelLoadError::ModelLoadError;
};

/// The contract version this runtime understands (`msync.contract_version`).
constexpr const char* kContractVersion = "1";
/// Written in place of the batch dimension in contract shapes ("B" in the metadata).
constexpr int64_t kBatchDim = -1;

/// A non-state input or output: `shape` has kBatchDim for "B".
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype = "float32";
  std::string description;

  /// The shape with the batch dimension replaced by `batch`.
  std::vector<int64_t> ConcreteShape(int64_t batch) const;
  /// Number of elements for `batch` streams.
  int64_t Numel(int64_t batch) const;
};

/// One piece of stream memory: input `name`, its next value the output `next_name`.
/// `init` is "zeros", "uniform(0,1)" or "reference_face".
struct StateSpec : TensorSpec {
  std::string next_name;
  std::string init = "zeros";
};

/// An input or output of the ONNX graph as the session reports it (for CheckGraph).
struct GraphTensor {
  std::string name;
  bool is_float32 = true;       // element type is tensor(float)
  std::string type_name;        // for messages, e.g. "tensor(float)"
  std::vector<int64_t> shape;   // -1 (or any negative) for a symbolic dimension
  bool has_shape = true;        // false when the graph gives no rank
};

/// The validated contract of one exported step model.
struct StepContract {
  std::string contract_version;
  int64_t sample_rate_hz = 0;
  int64_t samples_per_frame = 0;
  double fps = 0.0;
  int64_t lookahead_frames = 0;
  int64_t num_landmarks = 0;
  int64_t landmark_dims = 0;
  std::string landmark_layout;
  std::string coordinates;
  TensorSpec audio_input;
  TensorSpec landmarks_output;
  std::vector<StateSpec> states;
  std::vector<float> reference_face;  // num_landmarks * landmark_dims, row-major
  std::string model_version;
  std::string training_data;
  std::string generator_config_json;  // verbatim (a JSON object)
  std::string frontend_json;          // verbatim (a JSON object)

  /// Parse and validate the `msync.*` entries of a model's custom metadata. Throws ContractError.
  static StepContract FromMetadata(const std::map<std::string, std::string>& metadata);

  /// Internal consistency (the checks of StepContract.validate in contract.py). Throws ContractError.
  void Validate() const;

  /// Verify that the graph's inputs/outputs are exactly the contract's names, float32, with matching ranks and
  /// static dims (the batch dim may be symbolic or fixed). Throws ContractError listing every mismatch,
  /// prefixed with `where`.
  void CheckGraph(const std::vector<GraphTensor>& inputs, const std::vector<GraphTensor>& outputs,
                  const std::string& where) const;

  /// Floats per landmark frame of one stream (num_landmarks * landmark_dims).
  int64_t FrameFloats() const { return num_landmarks * landmark_dims; }
  /// Duration of one step in milliseconds (samples_per_frame / sample_rate_hz).
  double FrameDurationMs() const { return 1000.0 * samples_per_frame / sample_rate_hz; }
  /// Index of a state by name, or -1.
  int StateIndex(const std::string& name) const;
  /// One-line description ("16000 Hz, 640 samples/step, 25 fps, ...") for logs.
  std::string Summary() const;
};

/// Parse a reference face from JSON text: a num_landmarks x landmark_dims list of lists, or an object with such a
/// list under "landmarks" (the format `msync export --reference-face` reads). Throws ContractError.
std::vector<float> ParseReferenceFace(const std::string& json_text, int64_t num_landmarks, int64_t landmark_dims,
                                      const std::string& where);

}  // namespace msync

#endif  // MSYNC_CONTRACT_H_
