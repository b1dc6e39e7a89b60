{
 "key": "228cf2f92d6bc34c",
 "signature": "CtZSKzKtyAinAD2njIDaf+mm+JOKnjLBpHsgdpIaOKOlD+jFzLnD1wV09GianTOPQAiRIhZR6ngaOX5W/UNkBg=="
}
