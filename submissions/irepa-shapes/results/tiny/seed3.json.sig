{
 "key": "8c406635d5fd3ff6",
 "signature": "VR2lQuiPXEspLO1f+hbsdhQq7v00dcts8Ulb2fMn7yNbDroEQTGNgWbsBnC/8M1HdMEnDkA+j7ErcqSCgjsSCQ=="
}
